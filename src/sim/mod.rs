//! Qlik Cloud simulator. (Being implemented.)
