"""Trajectory data: :class:`~prefrl.data.segments.Segment`, :class:`~prefrl.data.segments.ClipPair`
and the segment buffer that cuts rollouts into clips."""
