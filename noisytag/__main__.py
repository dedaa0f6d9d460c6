from noisytag.cli import app

app()
