"""What a run reports: runs aggregated into the results table (`results`), the run summary at the
end of a run (`run_summary`), and one self-contained HTML page of results, training curves, item
spaces, archetypes and the run's manifest (`model` builds it, `page` renders it; storage.report
reads its inputs, tasks.report writes it)."""
