"""The lab: the session store (the only owner of the log's SQL), its records and faults, the
review server and page (web/review.*), the report and its exports, reference intervals.

Builds on core and on what capture hands over (capture/sink.py, the web server guard).
"""
