"""Meeting intelligence: questions answered from, and summaries of, a meeting's transcript."""
