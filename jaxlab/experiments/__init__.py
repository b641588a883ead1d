"""Paper reproductions: experiments defined in experiments/<name>.py, run by `jaxlab reproduce`."""
