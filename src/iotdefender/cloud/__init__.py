"""Cloud-side metrics: what the broker sees of each device, aggregated on a window grid."""
