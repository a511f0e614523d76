"""One module per `cmroberta` verb; each exposes `register(subparsers)`."""
