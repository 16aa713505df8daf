"""CT viral-pneumonia surveillance (issue 14): de-identified records of every analysed
study, daily and ISO-week trends, EARS surge signals raised through the alert channels,
and public-health reports (CSV, FHIR R4 MeasureReport, JRS registration CSV).

The stage sits after ``alert`` and before ``web``: it follows the index's results like
the alert worker, keeps its own database (``DataDir.surveillance_db``), and the web stage
reads it (the ``/surveillance`` page) and tells it about radiologists' confirmations.
"""
