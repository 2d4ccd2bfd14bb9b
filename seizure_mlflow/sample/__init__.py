"""The synthetic sample data of the demo and the tests (scenes of a patient on a bed, trace videos; not user data), and
the data sets of a run: the user's COCO files, or the sample when none are given."""
