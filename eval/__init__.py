"""FID/KID, Cross-Domain Style Mixing and encoder metrics."""
