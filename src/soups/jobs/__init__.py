"""The jobs the entry points run (src/finetune.py, src/soup.py, src/analyze.py): each its stage's data flow, top to bottom."""
