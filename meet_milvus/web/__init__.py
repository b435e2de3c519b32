"""`meet-milvus serve`: a JSON API and a web page over one warm `MeetSearcher`.

app.py        `create_app(searcher)`: the FastAPI application (API, page, gallery images)
page.py       the single web page (HTML, CSS and script in one string: ships without data files)
run.py        serving it: a bound socket, uvicorn in the foreground or in a thread
browser.py    headless Chromium through Playwright (the browser test and the screenshot)
screenshot.py `python -m meet_milvus.web.screenshot --collection demo --out docs/serve.png`

Importing this package loads nothing heavy; `meet_milvus.web.app` needs FastAPI.
"""
