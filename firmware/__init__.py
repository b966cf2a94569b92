"""Board support: detect the board, read power sensors, set power modes, load FPGA overlays,
and the power governor. Depends on nothing else in fleetgen."""
