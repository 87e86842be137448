"""Reports operators read every morning: runaway cost, cap what-ifs, vendor quality."""
