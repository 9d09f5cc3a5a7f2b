# Reconciliation runs, bill rows and discrepancies arrive with the reconciliation issue.
