"""The dashboard's templates and static files; installed as `microfactory.assets`."""
