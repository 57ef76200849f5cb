"""Looking at a study: the HTML report and the label-issue finder."""
