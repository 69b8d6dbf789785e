"""`make demo`: see demo.py."""
