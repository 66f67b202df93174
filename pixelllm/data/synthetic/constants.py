"""Tunable numbers and fixed label sets of the synthetic world, shared by every stage of the generator."""
from __future__ import annotations


#: Default probability of each real-world oddity (zero-length utterance, integer times, missing trace,
#: trailing space in a VG phrase, VG box with negative x/y), per record / image.
DEFAULT_ODDITY_RATE = 0.02
#: Pointer positions up to this far outside [0, 1] are recorded (the band around the image real LN
#: recordings keep); leaving the band ends a trace segment.
TRACE_BAND = 0.1
#: Minimum fraction of an object's full shape that must stay visible after occlusion.
MIN_VISIBLE_FRACTION = 0.6
#: Relations need a centre offset of at least this fraction of the image side along their axis.
RELATION_MIN_OFFSET = 0.06
#: "next to": the gap between the two visible boxes is at most this fraction of the image side.
NEXT_TO_MAX_GAP = 0.06
#: Distribution of the number of objects per image (1..6).
N_OBJECTS_P = (0.08, 0.20, 0.24, 0.22, 0.15, 0.11)
SPLITS = ("train", "val", "test")
EXPRESSION_CLASSES = ("attribute", "disambiguating", "spatial")
