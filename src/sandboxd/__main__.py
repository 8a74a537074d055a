from sandboxd.cli import app

app(prog_name="sandboxd")
