"""Prediction, refinement with proposals, and the PRM baseline."""
