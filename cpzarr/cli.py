"""The ``cpzarr`` command: a thin layer over the Python API, one command per stage."""

import click


@click.group()
@click.version_option(package_name="cpzarr")
def main():
    """Array-native image-based profiling of Cell Painting screens."""


# Each stage's command lives below in data-flow order; keep every command a thin wrapper.

# --- ingest / info ---

# --- locate ---

# --- profile (features) ---

# --- train ---

# --- profiles ---

# --- evaluate ---

# --- run / demo ---


if __name__ == "__main__":
    main()
