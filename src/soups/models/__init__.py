"""Classifiers the project fine-tunes and soups (open_clip, timm, transformers text encoders) and their pretrained weights."""
