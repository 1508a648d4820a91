"""The train stage's launcher: torchrun -m model.train, and what it wrote read back."""
