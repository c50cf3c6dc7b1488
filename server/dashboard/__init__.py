"""The web dashboard served with the REST routes (`--http-listen`): routes.py, feed.py, static/."""
