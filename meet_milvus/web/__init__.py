"""`meet-milvus serve`: a JSON API and a web page over one warm `MeetSearcher`.

app.py        `create_app(searcher)`: the FastAPI application (API, page, gallery images)
page.py       the single web page (HTML, CSS and script in one string: ships without data files)
run.py        serving it: a bound socket, uvicorn in the foreground or in a thread
auth.py       the access token and the browser guards

The browser test's Playwright helpers and the README's screenshot live in tests/tools/.

Importing this package loads nothing heavy; `meet_milvus.web.app` needs FastAPI.
"""
