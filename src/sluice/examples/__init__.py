"""Jobs shipped with Sluice: `sluice demo` runs them, and examples/ in the repository runs them as pipeline
files. They live in the package so that an installed wheel has them too."""
