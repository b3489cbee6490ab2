"""Deployment: models exported to run without jaxseg (`stablehlo`; its standalone `stablehlo_loader`)."""
