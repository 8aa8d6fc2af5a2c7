/*
 * Byte classes of HTTP/1 syntax (RFC 9110/9112), shared by the request parser and the
 * response parser so that both agree on what a token or a field value is.
 */
#ifndef SB_NET_HTTP1_CHARS_H
#define SB_NET_HTTP1_CHARS_H

enum sb__http1_class {
    SB__HTTP1_TCHAR = 0x01,  /* RFC 9110 tchar */
    SB__HTTP1_VCHAR = 0x02,  /* field-vchar or obs-text: 0x21-0x7E, 0x80-0xFF */
    SB__HTTP1_WS = 0x04,     /* SP, HTAB */
    SB__HTTP1_TARGET = 0x08, /* allowed in a request-target: 0x21-0x7E */
    SB__HTTP1_HOST = 0x10,   /* unreserved, sub-delims, '%', ':', '[', ']' */
    SB__HTTP1_HEX = 0x20,
};

extern const unsigned char sb__http1_cls[256];

#define SB__HTTP1_CLS(c) sb__http1_cls[(unsigned char)(c)]

#endif
