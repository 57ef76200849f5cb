"""Datasets: layouts and labels, the decode-once image cache, person-grouped folds, a first look (eda), synthetic demo data."""
