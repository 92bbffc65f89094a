"""Decision-makers inside the graphs: inspector, questioner, rewriter, users."""
