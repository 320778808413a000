"""Typical-case (replica) theory of linear regression with quantized weights, with AMP and simulation."""
