"""Training: the official optimiser and schedule, checkpoint/resume, the fit driver."""
