"""Model recipes (training, export, quantization) and the small models fleetgen ships."""
