"""One module per backend: availability, supported inputs, and the differentiable op."""
