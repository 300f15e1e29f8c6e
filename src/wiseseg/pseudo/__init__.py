"""Pseudo masks: peak → candidate proposals, Eq. 1 sampling, COCO export."""
