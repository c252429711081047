"""The reporting layer: result folders -> tidy DataFrame -> leaderboard tables, statistics, plots
and the HTML page (:func:`reports.build.build_report`). It reads only result folders, so it works on
results copied from another machine and never imports a method."""
