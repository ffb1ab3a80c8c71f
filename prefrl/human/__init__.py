"""People in the loop: finding and rendering clips, and the pygame labelling viewer (the
only module that imports pygame). Never imports torch."""
