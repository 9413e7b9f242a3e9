"""One module per tab, each exposing ``add_<tab>_tab(client, ...)`` and its handlers
(``experiments_html`` holds the experiments tab's HTML)."""
