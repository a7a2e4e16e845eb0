"""Live speaker labels (online diarization): which voice said each word of a stream, as "Speaker 1", "Speaker 2"...

options.py the config section; encoder.py the GE2E voice encoder; tracker.py one stream's speakers, piece by piece;
words.py labels onto words; service.py the Diarizer every session shares (one worker thread, off the event loop).
"""
from .options import SpeakerOptions
from .service import Diarizer
from .tracker import Piece, SpeakerTracker
from .words import label_at, label_words

__all__ = ["SpeakerOptions", "Diarizer", "SpeakerTracker", "Piece", "label_words", "label_at"]
