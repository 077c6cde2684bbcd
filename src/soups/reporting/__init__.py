"""What a soup job writes: the report (table, calibration, figure), each recipe's folder and W&B entries."""
