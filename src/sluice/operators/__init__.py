"""Operators: the logic of each step, over whole batches. Pure: no I/O."""
