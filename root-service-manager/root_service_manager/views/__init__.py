"""HTTP views, one blueprint per resource; they parse input, call the domain, shape output."""
