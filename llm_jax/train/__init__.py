"""Training: optimizer, pure steps, and the loop."""
