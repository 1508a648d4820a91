"""The download stage: img2dataset over the crawl candidates, with the fetch guards."""
