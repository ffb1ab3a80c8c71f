"""Feedback: answers (``Choice``), the label store (SQLite), query selection, the label
schedule and the teachers (synthetic and human). Never imports torch, so the labelling
viewer's process stays light."""
