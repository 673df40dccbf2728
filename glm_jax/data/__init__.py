"""Blank-infilling data: vocabularies, objectives, seqio tasks."""
