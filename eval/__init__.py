"""Evaluation harness: video QA and image classification."""
