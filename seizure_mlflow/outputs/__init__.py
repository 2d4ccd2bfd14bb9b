"""What commands write: output folders staged and replaced whole, the training folder and its lock."""
