"""The web app's logic without its page (`app.py` lays the page out): models loaded once
(loading), what a request does (handler), what the page says (texts), the figures (plots), and
the example clips made from the bundled photo (examples, assets/). Never imports training."""
