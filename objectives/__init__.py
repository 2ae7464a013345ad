"""What a trial is measured by."""
