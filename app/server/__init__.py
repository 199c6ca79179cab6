"""Server-side code that gunicorn loads by name; it imports nothing from the app."""
