//! The contract shared by the Drover server and agent (formats, topics, messages).
